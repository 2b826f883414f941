from services.frontend.server import serve

serve()
