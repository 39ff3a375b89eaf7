"""`python -m third_party_infer`: see `third_party_infer.run`."""

import sys

from third_party_infer import run

sys.exit(run.main())
