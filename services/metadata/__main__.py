from services.metadata.server import serve

serve()
