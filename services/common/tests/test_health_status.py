import asyncio

from grpc_health.v1 import health, health_pb2

from services.common.grpc_server import NOT_SERVING, SERVING
from services.common.health_status import HealthFollower


async def status(servicer: health.aio.HealthServicer, service: str) -> int:
    reply = await servicer.Check(health_pb2.HealthCheckRequest(service=service), None)
    return reply.status


async def test_statuses_follow_the_check_and_a_failing_check_is_not_serving():
    servicer = health.aio.HealthServicer()
    for service in ("", "x"):
        await servicer.set(service, SERVING)
    answers = ["database gone"]

    async def check():
        answer = answers[-1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    follower = HealthFollower(servicer, ("", "x"), check, 0.01, what="the test", serving=True)
    follower.start()
    try:
        await asyncio.sleep(0.05)
        assert [await status(servicer, s) for s in ("", "x")] == [NOT_SERVING, NOT_SERVING]
        answers.append(None)
        await asyncio.sleep(0.05)
        assert await status(servicer, "x") == SERVING
        answers.append(RuntimeError("boom"))
        await asyncio.sleep(0.05)
        assert await status(servicer, "x") == NOT_SERVING
        follower.cancel()
        answers.append(None)
        await asyncio.sleep(0.05)
        assert await status(servicer, "x") == NOT_SERVING  # cancelled: publishes nothing more
    finally:
        await follower.stop()
