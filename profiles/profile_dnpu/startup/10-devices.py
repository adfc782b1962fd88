# The DNPU: the virtual device unless DNPU_SETUP names a hardware profile.
from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.session import setup_profile_from_env

dnpu = build_dnpu(setup_profile_from_env())
