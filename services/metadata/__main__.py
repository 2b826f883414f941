import asyncio

from services.metadata.server import serve

asyncio.run(serve())
