"""The CDF 9/7 lifting constants (JPEG 2000 Part 1, Annex F; Daubechies and Sweldens' factorisation),
torch-free so that the compiled transform (model.lifting_kernels) and the torch one (model.lifting)
share them."""

ALPHA = -1.586134342059924
BETA = -0.052980118572961
GAMMA = 0.882911075530934
DELTA = 0.443506852043971
KAPPA = 1.230174104914001
