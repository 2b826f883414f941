"""What every registry service needs, written once: configuration parsing,
logging, errors, gRPC server/channel plumbing, health, retries, telemetry."""
