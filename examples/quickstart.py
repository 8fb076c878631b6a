"""Start an execution, look it up, fetch its result or cancel it: all four calls.

Run against the real API with ``TRANSACTIONLINK_TOKEN`` set:

    python examples/quickstart.py <workflow-definition-id>
"""

from __future__ import annotations

import asyncio
import sys

from aiotlink import APIError, TransactionLinkClient


async def main(definition_id: str) -> None:
    async with TransactionLinkClient() as client:  # token from TRANSACTIONLINK_TOKEN
        execution = await client.workflows.initialise(
            definition_id, locale="en", parameters={"customerId": "c-42"}
        )
        print(f"started {execution.id}: {execution.status}")
        execution = await client.workflows.find(execution.id)
        print(f"now {execution.status}")
        if execution.status == "COMPLETED":
            print("result:", await client.workflows.get_result(execution.id))
        elif not execution.is_terminal:
            await client.workflows.cancel(execution.id)
            print("cancelled")
        try:
            await client.workflows.find("00000000-0000-0000-0000-000000000000")
        except APIError as error:
            print("as expected:", error)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
