"""``python -m selftok_hf.evaluation``: the ``selftok-eval`` tool (:func:`selftok_hf.evaluation.reconstruction.main`)."""

import sys

from .reconstruction import main

sys.exit(main())
