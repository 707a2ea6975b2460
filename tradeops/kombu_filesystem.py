"""kombu's filesystem transport (the zero-setup broker), with atomic message files.

kombu 5.7 creates a message file, then writes it; a consumer that lists the folder in between moves the empty file
away and crashes on JSONDecodeError (seen taking a `make run` worker down in CI). Here a message is written under a
name no consumer picks (`….msg.tmp`) and renamed into place, which is atomic within one folder.
"""

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # The signature of kombu's own filesystem.Channel._put; celery-types' stub ignores the same [override] there (it
    # names AbstractChannel's `message` `payload`).
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]  # as kombu's
        filename = os.path.join(self.data_folder_out, f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg")
        partial = f"{filename}.tmp"
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, filename)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {filename!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
