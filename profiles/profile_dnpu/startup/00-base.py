# RunEngine and storage: every document goes to Tiled (embedded by default, see
# dnpu_bluesky.session for the environment variables that point it elsewhere).
from bluesky import plan_stubs as bps  # noqa: F401
from bluesky import plans as bp  # noqa: F401

from dnpu_bluesky.session import make_run_engine, storage_config_from_env
from dnpu_bluesky.storage import find_runs, load_run, open_storage  # noqa: F401

print("Opening the run store (Tiled); the embedded server takes a few seconds to start...")
storage = open_storage(storage_config_from_env())
runs = storage.client
RE = make_run_engine(storage)
