"""MR signal equations of the phantom (pure, arrays in, arrays out)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def spin_echo_signal(pd, t1_ms, t2_ms, tr_ms: float, te_ms: float, refocusing_deg: float = 180.0):
    """Turbo-spin-echo magnitude PD * (1 - exp(-TR/T1)) * exp(-TE/T2) * sin^2(FA/2), arbitrary units.
    Voids (PD 0) stay 0; T1, T2 must be > 0."""
    pd, t1, t2 = (np.asarray(x, float) for x in (pd, t1_ms, t2_ms))
    return pd * (1.0 - np.exp(-tr_ms / t1)) * np.exp(-te_ms / t2) * math.sin(math.radians(refocusing_deg) / 2) ** 2


def diffusion_signal(s0, adc_mm2_s, b_s_mm2: float):
    """Mono-exponential DWI S0 * exp(-b * ADC); ADC in mm^2/s, b in s/mm^2."""
    return np.asarray(s0) * np.exp(-b_s_mm2 * np.asarray(adc_mm2_s))


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator, correlation_vox: float = 0.0) -> np.ndarray:
    """Magnitude of signal + complex Gaussian noise of sd `sigma` per channel; `correlation_vox` > 0 smooths the
    noise in-plane (vendor reconstruction filters) at the same sd. (nz, ny, nx) float in, float32 out."""
    noise = rng.standard_normal((2, *signal.shape)).astype(np.float32)
    if correlation_vox > 0:
        noise = ndimage.gaussian_filter(noise, (0, 0, correlation_vox, correlation_vox))
        noise /= noise.std()
    noise *= sigma
    return np.hypot(signal + noise[0], noise[1]).astype(np.float32)


def fit_adc(signals: np.ndarray, b_values) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel log-linear least squares of ln S = ln S0 - b ADC, as scanners do.
    signals (B, ...) > 0 (clipped at 1e-6); b_values (B,) s/mm^2 -> (S0 (...), ADC (...) mm^2/s)."""
    b = np.asarray(b_values, float)
    y = np.log(np.maximum(signals, 1e-6))
    bc = b - b.mean()
    adc = -np.tensordot(bc, y - y.mean(axis=0), axes=1) / np.sum(bc * bc)
    s0 = np.exp(y.mean(axis=0) + adc * b.mean())
    return s0, adc


def susceptibility_displacement(X, Y, Z, centre, radius_mm: float, amplitude_mm: float) -> np.ndarray:
    """EPI displacement (mm, along phase encoding) from the field of an air sphere in tissue: a dipole
    amplitude * (r/rho)^3 * (3 cos^2(theta) - 1) / 2 with theta to B0 (z); rho clipped to r inside the sphere.
    X, Y, Z world mm (any shape) -> same shape."""
    dx, dy, dz = X - centre[0], Y - centre[1], Z - centre[2]
    rho2 = np.maximum(dx * dx + dy * dy + dz * dz, radius_mm**2)
    cos2 = dz * dz / rho2
    return (amplitude_mm * (radius_mm**2 / rho2) ** 1.5 * (3.0 * cos2 - 1.0) / 2.0).astype(np.float32)


def plane_wave_texture(X, Y, Z, waves: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Smooth tissue texture: sum of cos(k . p + phase) / 2 over waves (W, 3) 1/mm; roughly unit-sd. -> like X."""
    out = np.zeros(np.shape(X), np.float32)
    for k, ph in zip(waves, phases):
        out += np.cos(float(k[0]) * X + float(k[1]) * Y + float(k[2]) * Z + float(ph))
    return out / 2.0


def coil_bias(X, Y, Z, centre, coil, width_mm: float, gain: float, gradient) -> np.ndarray:
    """Smooth receive-coil bias, 1 at the gland centre: exp(gain * exp(-|p - coil|^2 / 2w^2) + gradient . (p - c)),
    brighter near the coil (posterior, by the rectum). gradient (3,) 1/mm. -> like X, float32."""
    def log_bias(x, y, z):
        d2 = (x - coil[0]) ** 2 + (y - coil[1]) ** 2 + (z - coil[2]) ** 2
        lin = gradient[0] * (x - centre[0]) + gradient[1] * (y - centre[1]) + gradient[2] * (z - centre[2])
        return gain * np.exp(-d2 / (2.0 * width_mm**2)) + lin
    return np.exp(log_bias(X, Y, Z) - log_bias(*centre)).astype(np.float32)
