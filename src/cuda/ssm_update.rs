//! Safe launchers of the ssm_update kernels (being written).
