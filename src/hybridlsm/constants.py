"""Physical constants (SI). Sources as in docs/physics-reference §0 (bigleaf constants)."""

CP_AIR = 1004.834  # specific heat of dry air at constant pressure [J kg-1 K-1]
R_DRY = 287.0586  # gas constant of dry air [J kg-1 K-1]
R_VAPOUR = 461.5  # gas constant of water vapour [J kg-1 K-1]
EPSILON = 0.622  # ratio of molar masses water/dry air [-]
VON_KARMAN = 0.41  # von Karman constant [-]
GRAVITY = 9.81  # [m s-2]
STEFAN_BOLTZMANN = 5.670367e-8  # [W m-2 K-4]
LATENT_HEAT_FUSION = 3.34e5  # [J kg-1]
T_FREEZE = 273.15  # [K]
RHO_WATER = 1000.0  # [kg m-3]
SECONDS_PER_DAY = 86400.0
