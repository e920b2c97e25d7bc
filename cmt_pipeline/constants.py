"""The paper's noise levels, named once so that configs, solvers, samplers, objectives and the CLI cannot disagree.

few_step_pipeline.py keeps its own literals: it is copied verbatim into exported folders, which need nothing but
torch and diffusers."""

SIGMA_MAX = 80.0  # EDM: the prior's noise level, x_T = sigma_max * noise
SIGMA_MIN = 0.002  # EDM: the last noise level of a teacher's solve
SIGMA_DATA = 0.5  # EDM: the data's standard deviation (images in [-1, 1])
SIGMA_MID = 0.821  # the 2-step sampler's re-noise level (the paper's CIFAR-10 ECT value)
SIGMA_MIN_SHIFT = 0.003  # the boundary f(x, s) = x of a consistency student holds at s = sigma_min_shift

# The teacher's solve the paper mid-trains on (DPM-Solver++(3M), 16 steps, log-SNR-uniform grid): generation's,
# evaluation's and the sample grids' default
SOLVER, STEPS, GRID = "dpm3", 16, "logsnr"
TIME_SCALE = 1000.0  # a fresh UNet's timestep input is TIME_SCALE * log(sigma) / 4 (diffusers' 0-1000 range)
