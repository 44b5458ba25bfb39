"""Physics shared by simulation and reconstruction: PSF, camera, forward operator."""
from stormfold.physics.camera import Camera
from stormfold.physics.operator import BlurDownsample, gaussian_kernel_1d
from stormfold.physics.psf import (fwhm_from_sigma, integrated_gaussian_windows, render_emitters,
                                   sigma_from_fwhm, sigma_from_optics)

__all__ = ["Camera", "BlurDownsample", "gaussian_kernel_1d", "fwhm_from_sigma",
           "integrated_gaussian_windows", "render_emitters", "sigma_from_fwhm", "sigma_from_optics"]
