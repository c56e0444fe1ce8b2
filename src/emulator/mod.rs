//! An offline emulator of DT's identity service and a slice of its API.
