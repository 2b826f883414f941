from services.blobstore.server import serve

serve()
