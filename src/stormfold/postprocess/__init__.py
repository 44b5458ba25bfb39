"""Post-processing of localization tables (SPEC §8): drift correction, linking, filters,
DBSCAN clustering, rendering, FRC resolution, and chains of these steps.

Every step is a function over the localization table (DataFrame in, DataFrame(s) out, no
files); :mod:`stormfold.postprocess.chain` runs them in a row, and
:mod:`stormfold.postprocess.commands` from and to files for the CLI.
"""
from stormfold.postprocess.chain import (ChainResult, Context, StepOutput, check_chain, run_chain,
                                         run_step)
from stormfold.postprocess.commands import postprocess_file, run_command
from stormfold.postprocess.cluster import ClusterParams, cluster, cluster_summary, dbscan
from stormfold.postprocess.drift import (DriftParams, DriftResult, apply_drift, correct_drift,
                                         estimate_drift, estimate_drift_fiducials,
                                         estimate_drift_rcc, read_drift_csv, residual_rms_nm)
from stormfold.postprocess.filters import (FilterParams, expression_mask, filter_table,
                                           local_density, roi_mask)
from stormfold.postprocess.frc import FrcParams, FrcResult, frc
from stormfold.postprocess.link import (LinkParams, LinkResult, link, link_groups, merge_groups,
                                        on_events, pair_precision_recall)
from stormfold.postprocess.render import (RenderParams, render, render_gaussian,
                                          render_histogram, write_image)

__all__ = [
    "ChainResult", "Context", "StepOutput", "check_chain", "postprocess_file", "run_chain",
    "run_command", "run_step",
    "ClusterParams", "cluster", "cluster_summary", "dbscan",
    "DriftParams", "DriftResult", "apply_drift", "correct_drift", "estimate_drift",
    "estimate_drift_fiducials", "estimate_drift_rcc", "read_drift_csv", "residual_rms_nm",
    "FilterParams", "expression_mask", "filter_table", "local_density", "roi_mask",
    "FrcParams", "FrcResult", "frc",
    "LinkParams", "LinkResult", "link", "link_groups", "merge_groups", "on_events",
    "pair_precision_recall",
    "RenderParams", "render", "render_gaussian", "render_histogram", "write_image",
]
