"""Rendering a planned case: T2W, DWI/ADC and masks (noise from the case's second generator)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from taskalign.data.grid import Grid
from taskalign.data.labels import ZONE_LABELS
from taskalign.data.phantom.geometry import block_mean, label_grid, tissue_classes
from taskalign.data.phantom.planning import CasePlan
from taskalign.data.phantom.signal import (
    coil_bias,
    diffusion_signal,
    fit_adc,
    plane_wave_texture,
    rician,
    spin_echo_signal,
    susceptibility_displacement,
)
from taskalign.data.phantom.tissues import C, VENDORS, ZONE_OF_CLASS

T2W_SUPERSAMPLE = (1, 1, 3)  # (x, y, z) sub-voxels: partial volume across the thick slice; odd so the centre is one
DWI_SUPERSAMPLE = (2, 2, 3)
ADC_MAX = 4000  # 1e-6 mm^2/s, clip of the stored ADC map


@dataclass
class CaseImages:
    """Rendered arrays, (nz, ny, nx). Images int16 (T2W, DWI in vendor units; ADC in 1e-6 mm^2/s);
    masks uint8 on the T2W grid; `anatomy`/`lesion_id` the class and lesion maps at T2W voxel centres."""

    t2w: np.ndarray
    adc: np.ndarray
    dwi: np.ndarray
    prostate: np.ndarray
    zones: np.ndarray
    lesion: np.ndarray
    rectum: np.ndarray
    anatomy: np.ndarray
    lesion_id: np.ndarray
    t2w_grid: Grid
    dwi_grid: Grid


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def render_case(plan: CasePlan) -> CaseImages:
    """Images and masks of a planned case (deterministic given the plan)."""
    rng = np.random.default_rng(plan.noise_seed)
    acq, vend = plan.acq, VENDORS[plan.acq["vendor"]]
    pz = C["pz"]

    # T2W: spin echo per class, partial volume across the slice, bias, texture, Rician noise
    fine = plan.t2w_grid.supersampled(T2W_SUPERSAMPLE)
    anat_f, les_f = label_grid(fine, plan.program, plan.lesions)
    table = spin_echo_signal(plan.pd, plan.t1, plan.t2, acq["tr"], acq["te"], acq["flip_angle"]).astype(np.float32)
    t2w = block_mean(table[tissue_classes(anat_f, les_f)], T2W_SUPERSAMPLE)
    X, Y, Z = plan.t2w_grid.world()
    tex = plane_wave_texture(X, Y, Z, plan.texture["waves"], plan.texture["phases"])
    t2w *= coil_bias(X, Y, Z, **plan.bias) * (1.0 + plan.texture["amp_t2w"] * tex)
    t2w = rician(t2w, float(table[pz]) / acq["snr_t2w"], rng, vend["noise_corr"])
    centre = T2W_SUPERSAMPLE[2] // 2
    anatomy, lesion_id = anat_f[centre::T2W_SUPERSAMPLE[2]], les_f[centre::T2W_SUPERSAMPLE[2]]
    zones = ZONE_OF_CLASS[anatomy]

    # DWI: S0 (fat suppressed, T2-weighted at TE_dwi) * exp(-b ADC) with ADC texture, on the coarser grid
    fine = plan.dwi_grid.supersampled(DWI_SUPERSAMPLE)
    cls = tissue_classes(*label_grid(fine, plan.program, plan.lesions))
    s0_table = spin_echo_signal(plan.pd * plan.dwi_pd_factor, plan.t1, plan.t2, acq["tr_dwi"], acq["te_dwi"])
    s0_f, adc_f = s0_table.astype(np.float32)[cls], plan.adc.astype(np.float32)[cls]
    Xd, Yd, Zd = plan.dwi_grid.world()
    tex_d = 1.0 + plan.texture["amp_adc"] * plane_wave_texture(Xd, Yd, Zd, plan.texture["waves"],
                                                               plan.texture["phases"])
    fx, fy, fz = DWI_SUPERSAMPLE
    nz, ny, nx = plan.dwi_grid.shape
    adc_f = (adc_f.reshape(nz, fz, ny, fy, nx, fx) * tex_d[:, None, :, None, :, None]).reshape(adc_f.shape)
    bias_d = coil_bias(Xd, Yd, Zd, **{**plan.bias, "gain": 0.8 * plan.bias["gain"]})
    shift_vox = None
    if plan.rectal_air is not None:  # EPI distortion along phase encoding (grid j: anterior-posterior)
        shift_vox = susceptibility_displacement(Xd, Yd, Zd, **plan.rectal_air) / plan.dwi_grid.spacing[1]
        jacobian = np.clip(1.0 - np.gradient(shift_vox, axis=1), 0.2, 3.0)
        kk, jj, ii = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (nz, ny, nx)), indexing="ij")
    b_max = max(acq["b_values"])
    sigma = float(diffusion_signal(s0_table[pz], plan.adc[pz], b_max)) / acq["snr_dwi"]
    signals = []
    for b in acq["b_values"]:
        s = block_mean(diffusion_signal(s0_f, adc_f, b), DWI_SUPERSAMPLE).astype(np.float32)
        if shift_vox is not None:
            s = ndimage.map_coordinates(s, [kk, jj - shift_vox, ii], order=1, mode="nearest") * jacobian
        signals.append(rician(s * bias_d, sigma, rng, vend["noise_corr"]))
    signals = np.stack(signals)
    s0_fit, adc_fit = fit_adc(signals, acq["b_values"])
    adc_fit = np.clip(adc_fit, 0.0, ADC_MAX * 1e-6)
    dwi = diffusion_signal(s0_fit, adc_fit, acq["computed_b"])
    adc_fit[signals[int(np.argmin(acq["b_values"]))] < 3.0 * sigma] = 0.0  # scanners blank the noise floor

    return CaseImages(
        t2w=_to_int16(t2w * vend["scale"]), adc=_to_int16(adc_fit * 1e6), dwi=_to_int16(dwi * vend["scale"]),
        prostate=(zones == ZONE_LABELS["tz"]) | (zones == ZONE_LABELS["pz"]),
        zones=zones, lesion=lesion_id > 0, rectum=zones == ZONE_LABELS["rectum"],
        anatomy=anatomy, lesion_id=lesion_id, t2w_grid=plan.t2w_grid, dwi_grid=plan.dwi_grid,
    )
