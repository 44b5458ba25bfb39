"""Physics shared by simulation and reconstruction: PSF, camera, frame geometry and the
forward operators (every operator of the package lives here)."""
from stormfold.physics.camera import Camera
from stormfold.physics.geometry import FrameGeometry, fine_pixel_index
from stormfold.physics.operator import (BandedBlurDownsample, BlurDownsample, LinearOperator,
                                        SquaredBlurDownsample)
from stormfold.physics.psf import (fwhm_from_sigma, gaussian_kernel_1d, integrated_gaussian_1d,
                                   integrated_gaussian_windows, render_emitters, sigma_from_fwhm,
                                   sigma_from_optics)

__all__ = ["Camera", "FrameGeometry", "fine_pixel_index", "LinearOperator", "BlurDownsample",
           "BandedBlurDownsample", "SquaredBlurDownsample", "gaussian_kernel_1d",
           "integrated_gaussian_1d", "fwhm_from_sigma", "integrated_gaussian_windows",
           "render_emitters", "sigma_from_fwhm", "sigma_from_optics"]
