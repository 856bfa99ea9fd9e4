"""Pure functions: image and face imaging, geometry. Arrays/PIL in, arrays/PIL out; no I/O, no models."""
