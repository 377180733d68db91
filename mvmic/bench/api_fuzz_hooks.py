"""schemathesis's hooks of `make fuzz-api` (mvmic.bench.api_fuzz), for `st run` (SCHEMATHESIS_HOOKS=mvmic.bench.api_fuzz_hooks):
the seeds of the file that MVMIC_API_FUZZ_SEEDS names mixed into generated cases."""

import os
from pathlib import Path

from mvmic.bench.api_fuzz import SEEDS_VARIABLE, Seeds, install_hooks

install_hooks(Seeds.load(Path(os.environ[SEEDS_VARIABLE])))
