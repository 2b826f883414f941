"""Generated from proto/cogmentAPI/model_registry.proto by client/generate.py."""
