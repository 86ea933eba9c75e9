"""One torch thread in these tests (a shared 2-core machine)."""

from tests.helpers import single_torch_thread  # noqa: F401  (autouse in this folder)
