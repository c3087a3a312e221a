"""Device drivers (layer 3): protocols, real implementations and simulated twins.

- `drivers.protocols`: `Frame`, the `SLM` / `Camera` / `Stage` Protocols, shared constants.
- `drivers.base`: `DeviceBase`, the public-method -> ``_hw`` hook split every driver uses.
- `drivers.errors`: the one error taxonomy (`DeviceError` and subclasses).
- `drivers.sim`: `SimulatedBench` and its twins (seeded as-built errors, fault injection),
  the simulated SMC100 controller behind ``sim://smc100`` serial URLs, transcript testing.
- `drivers.slm_slmsuite`, `drivers.camera_genicam`, `drivers.stage_smc100`: real hardware.
- `drivers.registry`: `BenchConfig` from YAML and `open_devices(config)` by id.

Importing this package is cheap; heavy dependencies load with the module that needs them.
"""
