"""One file per execution backend, all behind `devices.backend.Backend`; found by name through
`devices.registry`. None imports a runtime beyond onnxruntime at import time: OpenVINO is
imported when first used, so a device without it still imports every backend."""
