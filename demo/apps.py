from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The development commands (`dev_setup`, `demo_story`): installed only when DJANGO_DEBUG is on (`make run`) and
    in the test settings, never in production."""

    name = "demo"
    verbose_name = "Development: make run's demo"
