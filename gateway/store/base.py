"""The one store interface that every backend (SQLite, PostgreSQL) implements.

All methods are coroutines. Backends connect lazily: constructing one does no I/O, the
first method call (usually `migrate()`) opens the connection or pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from gateway.store.codec import CallRows
from gateway.store.console_queries import CallFilter, CallSummary, RouteAction
from gateway.store.key_states import KeyEvent, KeyState
from gateway.store.records import ArtifactKind, ArtifactRecord, CallRecord, FeedbackRecord, Transition
from gateway.store.responses import StoredResponse
from gateway.store.rollups import RollupBucket
from gateway.store.spend_queries import SpendRow


class Store(Protocol):
    """Persistence for calls (with attempts), feedback, artifacts and their transitions."""

    async def migrate(self) -> None:
        """Apply every migration not yet recorded in `_migrations`; a no-op when up to date."""
        ...

    async def close(self) -> None:
        """Release connections; the store may not be used afterwards."""
        ...

    async def insert_calls(self, calls: Sequence[CallRecord]) -> None:
        """Insert calls and their attempts in one transaction; ids already stored are skipped."""
        ...

    async def insert_call_rows(self, rows: CallRows) -> None:
        """`insert_calls` for calls already turned into rows by `codec.call_rows` (the writer
        does it call by call, so a batch in flight holds rows, not records)."""
        ...

    async def get_call(self, call_id: str) -> CallRecord | None:
        """One call with its attempts and its request text restored, or None."""
        ...

    async def list_calls(
        self,
        *,
        route: str | None = None,
        since: float | None = None,
        until: float | None = None,
        user: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[CallRecord]:
        """Calls ordered by created_at; `since` is inclusive, `until` exclusive."""
        ...

    async def count_calls(self, *, route: str | None = None) -> int:
        """Number of stored calls, optionally for one route."""
        ...

    async def count_attempts(self) -> int:
        """Number of stored attempt rows (all calls)."""
        ...

    async def insert_feedback(self, fb: FeedbackRecord) -> None:
        """Insert one feedback row; an id already stored is skipped."""
        ...

    async def insert_feedback_many(self, feedback: Sequence[FeedbackRecord]) -> None:
        """`insert_feedback` for many rows in one transaction (the writer's batches)."""
        ...

    async def list_feedback(
        self,
        *,
        call_ids: Sequence[str] | None = None,
        route: str | None = None,
        since: float | None = None,
        source: str | None = None,
    ) -> list[FeedbackRecord]:
        """Feedback ordered by created_at; `route` filters through the call's route."""
        ...

    async def count_feedback(self, *, route: str | None = None, since: float | None = None) -> int:
        """Number of feedback rows, optionally for one route and/or since a time."""
        ...

    async def save_artifact(self, a: ArtifactRecord) -> None:
        """Insert an artifact, or replace the row with the same (route, kind, version)."""
        ...

    async def create_artifact(self, a: ArtifactRecord, created: Transition) -> bool:
        """Insert a new artifact and its creation transition atomically; False when the version exists."""
        ...

    async def get_artifact(self, route: str, kind: ArtifactKind, version: str) -> ArtifactRecord | None:
        """One artifact, or None."""
        ...

    async def artifact_versions(self, route: str, kind: ArtifactKind) -> list[str]:
        """The version ids of one route's artifact kind (a new id is picked often: an index version's
        evidence lists and evaluation grow with its examples, and a route has many versions)."""
        ...

    async def list_artifacts(self, route: str, kind: ArtifactKind, *, bodies: bool = True) -> list[ArtifactRecord]:
        """All versions of one route's artifact kind, ordered by created_at; `bodies=False`: body None."""
        ...

    async def forget_examples(self, route: str, example_ids: Sequence[str]) -> int:
        """Delete the stored index examples of `route` with these ids (every version holding them
        must be filtered first: gateway/store/forget.py); how many rows went."""
        ...

    async def transition(self, t: Transition) -> None:
        """Set the artifact's state and append the transition row, in one transaction.

        Raises KeyError for an unknown artifact and ValueError when `t.from_state` is given
        and differs from the stored state (another actor moved it first).
        """
        ...

    async def list_transitions(self, route: str, kind: ArtifactKind | None = None) -> list[Transition]:
        """Transitions of one route (optionally one kind), oldest first."""
        ...

    async def forget_user(self, user: str) -> tuple[int, int]:
        """Delete a user's calls (with attempts) and feedback; returns (calls, feedback) deleted.

        Feedback deleted is both the feedback given BY the user and any feedback ON their calls.
        A tombstone (the user id's hash and the time) makes the store drop that user's calls and
        feedback made before the forget that arrive later: queued in a running gateway, or spilled.
        """
        ...

    async def user_row_ids(self, user: str) -> tuple[list[str], list[str]]:
        """(ids of the user's calls, ids of the feedback the user gave): what `forget` looks for in
        learned artifacts before deleting the rows."""
        ...

    async def delete_older_than(self, ts: float, *, batch: int = 500) -> int:
        """Delete calls created before `ts` with their attempts and feedback; returns calls deleted.

        Works in batches of `batch` calls, each its own short transaction, so writers interleave.
        Then the orphan sweep: feedback created before `ts` whose call never arrived is deleted too
        (it is counted in no roll-up; it is not in the returned count). Tombstones of users forgotten
        before `ts` go too (a call that old is deleted on arrival).
        """
        ...

    # -- spend per key (gateway/store/spend_queries.py) ------------------------------------------
    async def spend_by_key(self, *, since: float, key_id: str | None = None) -> list[SpendRow]:
        """Calls made with a virtual key since `since` (a UTC day start), per (key, route, day)."""
        ...

    # -- virtual keys changed at run time (gateway/store/key_states.py) -------------------------
    async def key_states(self) -> list[KeyState]:
        """Every key's stored state (keys never changed at run time have none)."""
        ...

    async def save_key_state(self, state: KeyState, event: KeyEvent) -> None:
        """Replace one key's state and log the change, in one transaction."""
        ...

    async def key_events(self, name: str | None = None, *, limit: int = 200) -> list[KeyEvent]:
        """The newest changes to one key (or all), oldest first."""
        ...

    # -- the console's read queries (gateway/store/console_queries.py) --------------------------
    async def rollup_buckets(self, variants: Mapping[str, Sequence[str]], *, since: float, width_s: float,
                             buckets: int) -> list[RollupBucket]:
        """The chat calls and their feedback of each route (the keys of `variants`) per (variant, bucket of
        `width_s` seconds from `since`), summed from the hourly roll-ups (whole hours only); variants not in
        the route's list are summed under console_queries.OTHER."""
        ...

    async def calls_by_ids(self, ids: Sequence[str]) -> list[CallRecord]:
        """The calls with these ids (at most a few hundred), attempts and request text restored."""
        ...

    async def search_calls(self, f: CallFilter, *, limit: int = 50,
                           before: tuple[float, str] | None = None) -> list[CallSummary]:
        """Calls matching `f`, newest first, paged by (created_at, id) of the previous page's last row."""
        ...

    async def recent_feedback_calls(self, *, since: float, route: str | None = None,
                                    limit: int = 200) -> list[tuple[str, str]]:
        """(feedback id, call id) of the newest corrections and down-ratings, newest first."""
        ...

    async def record_action(self, a: RouteAction) -> None:
        """Append a person's action (promote, pause, freeze…) to the route's action log."""
        ...

    async def list_actions(self, route: str | None = None, *, limit: int = 500) -> list[RouteAction]:
        """The newest actions of one route (or all), oldest first."""
        ...

    # -- Responses API state (gateway/store/responses.py) ---------------------------------------
    async def save_response(self, r: StoredResponse) -> None:
        """Insert or replace one stored response (POST /v1/responses with `store`)."""
        ...

    async def get_response(self, response_id: str) -> StoredResponse | None:
        """One stored response, or None."""
        ...

    async def delete_response(self, response_id: str) -> bool:
        """Delete one stored response; False when there was none."""
        ...
