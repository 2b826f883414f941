import asyncio

from services.frontend.server import serve

asyncio.run(serve())
