"""One torch thread in these tests: on a shared 2-core machine, two threads per process
oversubscribe the cores and a 0.07 s training step can take seconds."""

from tests.helpers import single_torch_thread  # noqa: F401  (autouse in this folder)
