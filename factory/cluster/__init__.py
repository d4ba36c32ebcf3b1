"""Ray for every stage: `connect` (one entry, `init_ray`, with the token-auth rule) and `jobs`
(submit, status, logs, stop)."""

from factory.cluster.connect import (
                                     AUTH_ENV,
                                     LOCAL_OBJECT_STORE_BYTES,
                                     apply_auth_env,
                                     auth_mode,
                                     auth_report,
                                     check_reachable,
                                     cluster_info,
                                     init_ray,
                                     ray_env,
                                     shutdown_ray,
                                     token_available,
)

__all__ = ["AUTH_ENV", "LOCAL_OBJECT_STORE_BYTES", "apply_auth_env", "auth_mode", "auth_report", "check_reachable",
           "cluster_info", "init_ray", "ray_env", "shutdown_ray", "token_available"]
