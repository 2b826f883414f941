"""`python -m model_registry_client` is `model-registry`."""

import sys

from .cli import main

sys.exit(main())
