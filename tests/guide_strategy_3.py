"""The migration guide's Strategy 3 client ("New implementation with full features"),
verbatim, shared by the tests that run it. The guide leaves `_call_api` to the reader:
tests add a stub."""

from __future__ import annotations

import asyncio
import time
from typing import List

from flashcard_pipeline.exceptions import RateLimitError
from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter


class APIClient:
    def __init__(self):
        self.rate_limiter = ShardedRateLimiter(
            rate=600,
            period=60.0,
            shards=8,  # Better performance
            algorithm="token_bucket"
        )
    
    async def make_request(self, user_id: str):
        # Use sharding with user_id as key
        result = await self.rate_limiter.acquire(user_id)
        if not result.allowed:
            raise RateLimitError(
                f"Rate limited",  # noqa: F541 (verbatim)
                retry_after=result.retry_after
            )
        return await self._call_api()
    
    async def make_batch_request(self, user_ids: List[str]):
        # Use reservations for batch processing
        reservations = []
        for user_id in user_ids:
            reservation = await self.rate_limiter.reserve(
                user_id,
                max_wait=30.0
            )
            reservations.append(reservation)
        
        # Process when ready
        results = []
        for reservation in sorted(reservations, key=lambda r: r.execute_at):
            wait_time = reservation.execute_at - time.time()
            if wait_time > 0:
                await asyncio.sleep(wait_time)
            
            result = await self.rate_limiter.execute_reservation(reservation.id)
            if result.allowed:
                results.append(await self._call_api())
        
        return results
