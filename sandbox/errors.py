"""Binance's error payloads: ``{"code": -2013, "msg": "Order does not exist."}`` with an HTTP status."""


class ApiError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400, headers: dict | None = None):
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.status, self.headers = code, msg, status, headers or {}

    def body(self) -> dict:
        return {"code": self.code, "msg": self.msg}


def mandatory(name: str) -> ApiError:
    return ApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def bad_param(name: str) -> ApiError:
    return ApiError(-1130, f"Data sent for parameter '{name}' is not valid.")


ORDER_NOT_FOUND = (-2013, "Order does not exist.")
UNKNOWN_ORDER = (-2011, "Unknown order sent.")
LISTEN_KEY_MISSING = (-1125, "This listenKey does not exist.")
INVALID_API_KEY = (-2015, "Invalid API-key, IP, or permissions for action.")
INVALID_SIGNATURE = (-1022, "Signature for this request is not valid.")
