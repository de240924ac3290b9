"""Deterministic digital phantom of the male pelvis: analytic anatomy, MR signal equations, a NIfTI cohort.

The phantom is physics, not noise: every structure is an analytic solid in patient space (LPS, mm: +x patient
left, +y posterior, +z superior) carrying T1/T2/PD/ADC values sampled per case within the ranges of
shared/docs/phantom-physics.md. Images are *sampled through* a posed acquisition grid (the written direction
cosines and origin encode the pose), so one world-space anatomy is consistent across T2W, DWI/ADC and the masks.

Pipeline per case (pure functions, IO only in `cohort.write_cohort`):
  planning.plan_case   -> CasePlan: anatomy (paint program of Shapes), tissue table, lesions, labels,
                          acquisition, grids
  render.render_case   -> CaseImages: T2W (spin echo + coil bias + Rician noise, partial volume across the slice),
                          DWI at each b (S0 * exp(-b ADC), fat suppressed, rectal-air distortion, lower SNR),
                          ADC = log-linear fit, computed high-b image, and masks on the T2W grid (by voxel centre).

Modules: config (keys and defaults), tissues (class table), geometry (solids, painting), signal (equations),
anatomy (random pelvis and lesions), planning, render, cohort (files).
"""

from taskalign.data.phantom.config import DEFAULTS, phantom_config
from taskalign.data.phantom.cohort import write_cohort
from taskalign.data.phantom.planning import CasePlan, case_seed, plan_case
from taskalign.data.phantom.render import CaseImages, render_case
from taskalign.data.phantom.signal import diffusion_signal, fit_adc, rician, spin_echo_signal
from taskalign.data.phantom.anatomy import lesion_score, lesion_sector, zone_at
from taskalign.data.phantom.tissues import C, TISSUES, VENDORS, ZONE_OF_CLASS

__all__ = [
    "C", "DEFAULTS", "TISSUES", "VENDORS", "ZONE_OF_CLASS", "CaseImages", "CasePlan", "case_seed",
    "diffusion_signal", "fit_adc", "lesion_score", "lesion_sector", "phantom_config", "plan_case", "render_case",
    "rician", "spin_echo_signal", "write_cohort", "zone_at",
]
