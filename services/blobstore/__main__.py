import asyncio

from services.blobstore.server import serve

asyncio.run(serve())
