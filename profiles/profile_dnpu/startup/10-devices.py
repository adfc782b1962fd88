# The DNPU: the virtual device unless DNPU_SETUP names a hardware profile.
from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.session import setup_profile_from_env

setup = setup_profile_from_env()
dnpu = build_dnpu(setup)
# The setup profile's sample goes into every run's start document (RE comes from 00-base.py);
# without one, a sample that RE.md kept from an earlier session (RE.md["sample"] = ...) stays.
if setup.sample is not None:
    RE.md["sample"] = setup.sample  # noqa: F821
if "sample" in RE.md:  # noqa: F821
    print(f"Runs record sample {RE.md['sample']!r} (RE.md)")  # noqa: F821
