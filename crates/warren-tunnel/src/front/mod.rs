//! Consumer-side fronts: each accepted client connection becomes one flow.
