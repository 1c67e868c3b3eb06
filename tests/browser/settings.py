"""Settings of the admin server the browser tests start: the test settings plus static files."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django.contrib.staticfiles"]
STATIC_URL = "static/"

# Close the server's connection after every request: the test database is dropped at the
# end of the session, and PostgreSQL refuses while a session is still attached.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
