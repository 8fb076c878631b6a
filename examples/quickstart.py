"""All four calls in order: initialise, find, get_result (or cancel), and an error.

    TRANSACTIONLINK_TOKEN=tot_... python examples/quickstart.py <workflow-definition-id>

``TRANSACTIONLINK_BASE_URL`` points it elsewhere (the examples session uses the fake).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from aiotlink import NotFoundError, TransactionLinkClient

BASE_URL = os.environ.get("TRANSACTIONLINK_BASE_URL", "https://api.transactionlink.io")


async def main(definition_id: str) -> None:
    async with TransactionLinkClient(base_url=BASE_URL) as client:  # token from the env
        execution = await client.workflows.initialise(
            definition_id, locale="en", parameters={"customerId": "c-42"}
        )
        print(f"started {execution.id}: {execution.status}")
        execution = await client.workflows.wait_for_completion(execution.id, timeout=120)
        print(f"finished: {execution.status}")
        print("result:", await client.workflows.get_result(execution.id))

        running = await client.workflows.initialise(definition_id)
        await client.workflows.cancel(running.id)
        print("cancelled:", (await client.workflows.find(running.id)).status)
        try:
            await client.workflows.find("00000000-0000-4000-8000-000000000000")
        except NotFoundError as error:
            print("as expected:", error)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("definition_id", help="the workflow definition to run")
    args = parser.parse_args()
    if not os.environ.get("TRANSACTIONLINK_TOKEN"):
        parser.error("set TRANSACTIONLINK_TOKEN to your API token (tot_...)")
    asyncio.run(main(args.definition_id))
