# RunEngine and storage: every document goes to Tiled (embedded by default, see
# dnpu_bluesky.session for the environment variables that point it elsewhere).
from bluesky import plan_stubs as bps  # noqa: F401
from bluesky import plans as bp  # noqa: F401

# The standard plans by name as well (bp.scan is scan): the queue server offers the plans that
# are names in this namespace.
from bluesky.plan_stubs import mv, mvr  # noqa: F401
from bluesky.plans import (  # noqa: F401
    count,
    grid_scan,
    list_grid_scan,
    list_scan,
    log_scan,
    rel_grid_scan,
    rel_list_grid_scan,
    rel_list_scan,
    rel_log_scan,
    rel_scan,
    scan,
)

from dnpu_bluesky.session import (
    make_best_effort_callback,
    make_run_engine,
    persistent_metadata_from_env,
    storage_config_from_env,
)
from dnpu_bluesky.storage import find_runs, load_run, open_storage  # noqa: F401

print("Opening the run store (Tiled); the embedded server takes a few seconds to start...")
storage_config = storage_config_from_env()
storage = open_storage(storage_config, writes=True)  # the worker starts while it opens
runs = storage.client
# bec: bluesky's best-effort table, with plots where a GUI backend can show them
# (bec.disable_plots() / bec.enable_plots()). RE.md persists (scan_id keeps counting).
bec = make_best_effort_callback()
RE = make_run_engine(storage, md=persistent_metadata_from_env(storage_config), best_effort=bec)
