"""Mix ablations: grids of mixes (grid), what their runs read (inputs), training and evaluating
every cell x scale x seed with runs packed onto GPUs (run), and decision accuracy between scales
(decision)."""

from factory.ablate.grid import (
                                 BenchConfig,
                                 EvalConfig,
                                 GridConfig,
                                 ReportConfig,
                                 ScaleConfig,
                                 SubsetConfig,
                                 expand,
                                 label,
                                 load_grid,
                                 scaled,
)
from factory.ablate.inputs import Out, build_benchmarks, make_subset, plan_info, run_config
from factory.ablate.run import collect, default_eval, plan_tasks, run

__all__ = ["BenchConfig", "EvalConfig", "GridConfig", "Out", "ReportConfig", "ScaleConfig", "SubsetConfig",
           "build_benchmarks", "collect", "default_eval", "expand", "label", "load_grid", "make_subset",
           "plan_info", "plan_tasks", "run", "run_config", "scaled"]
