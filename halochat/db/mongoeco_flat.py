"""A flat-cost variant of mongoeco's SQLiteEngine, used only by the embedded database child.

mongoeco 4.11.0 makes operations cost O(collection size) (docs/embedded-db.md has the
profile). Four spots inside SQLiteEngine do it:

1. Inserts ask for `scan_payload_id=True`: every stored document is decoded to compare its
   `_id`, although only numeric `_id`s (1 == 1.0 == Int64(1)) can collide without sharing
   the storage key that the engine already looks up by primary key.
2. A unique index on two or more fields (ours: (session_id, seq), (session_id,
   client_msg_id)) is checked by decoding every stored document in Python; only one-field
   unique indexes use SQL.
3. Each write drops the per-collection "feature" cache (does any document hold an array at
   `session_id`? is `seq` numbers only? ...), so the next write or query re-runs full-table
   `json_type()` scans to rebuild it.
4. Before a sorted find, a probe query uses the generic filter SQL, whose "or the field is an
   array holding the value" branch defeats every index: a full scan per history page.

The subclass below keeps MongoDB semantics and removes the scans:

1. The payload `_id` scan runs only for numeric `_id`s.
2. Compound unique checks first narrow candidates through the SQLite expression index that
   mongoeco already built for the index (ObjectId, string and number fields; a number also
   matches any Decimal128 row), then compare the candidates exactly as mongoeco does.
   Collation, array values and documents with none of those field types fall back to
   mongoeco's own code.
3. After an insert or update the cached features are merged with the same SQL run on the
   written documents only (a scratch in-memory table), instead of being dropped. Every
   cached feature is "some document has property P" (stays true, or becomes true if a new
   document has P; a stale true only selects mongoeco's general path) or "all documents
   share sort type T" (stays T only if the new ones are T). Other writes invalidate as before.
4. The probe uses the array-aware translation that the query itself uses.

Besides: a smaller change outbox (bounded bookkeeping per write) and memory-mapped reads.

Per-operation overhead (docs/embedded-db.md, "Per-operation cost"):

6. With inline=True (only in the embedded child, a process of its own) operations run on
   the event loop instead of a worker thread each, and
7. the change hand-off after each write runs without its per-call lease-renewal thread.
8. A filter {_id: v, ...} (ObjectId/string v, whatever else) reads the one document stored
   under v's key and checks the filter in Python, instead of a full-scan SQL filter.
9. The wire `insert` command with several documents (pymongo's insert_many) goes through
   mongoeco's own insert_many, i.e. its batch path: one transaction and one index pass for
   the whole batch, instead of one insert_one (and one commit) per document. Per-document
   errors (duplicate keys) are reported exactly as before. `install_batch_insert_command`
   applies it; only the embedded child calls it.
10. No change-event bookkeeping. mongoeco records every write in a change outbox (a full copy
   of the document, serialized, plus lease/checkpoint commits to hand it to the change-stream
   hub). Its wire server rejects `$changeStream` ("Unsupported aggregation stage"), so in the
   embedded child nothing can ever read that outbox: `disable_change_publication` makes every
   operation's context DISABLED (mongoeco's own policy for writes nobody may observe) and the
   hand-off returns at once. About 1.4x on inserts and -30 % per conditional update.
11. Immutable values are shared by deep copies. mongoeco deep-copies a document about 19
   times per update (results, operators, outcomes); `copy.deepcopy` rebuilds every datetime
   and ObjectId through `__reduce_ex__`, 40 % of an update's time. Both types are immutable,
   so `share_immutable_values` registers them in the copy module's table of atomic types,
   as str and int are (a private table of the standard library, stable since Python 2; the
   child process only).
12. The feature merge (3.) of any write reuses the serialized form the write stored (the
   batch path's prepared payloads, what `_serialize_document` produced within the write, or
   for an update, which stores its row with SQL, that row read back in the same
   transaction) instead of encoding the documents again.

Pinned to the version it was written against: with any other mongoeco the plain engine is
used (make_engine logs a warning) until this module is re-checked.
"""

import contextvars
import copy
import datetime
import math
import sqlite3
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import bson
import mongoeco
from mongoeco.api._async import _database_admin_write_commands as _write_commands
from mongoeco.api._async.collection import AsyncCollection
from mongoeco.core.codec import DocumentCodec
from mongoeco.core.filtering import QueryEngine
from mongoeco.core.identity import id_contains_numeric_value
from mongoeco.core.operation_context import ChangePublicationPolicy
from mongoeco.core.paths import get_document_value
from mongoeco.core.query_plan import AndCondition, EqualsCondition
from mongoeco.engines._sqlite_connection import sqlite_read_scope
from mongoeco.engines._sqlite_plan_heuristics import sort_requires_python
from mongoeco.engines.sqlite import (
    _SQLITE_CHANGE_DISPATCH,
    SQLiteEngine,
    _ChangeDispatchHeartbeat,
)
from mongoeco.engines.sqlite_query import (
    json_path_for_field,
    type_expression_sql,
    value_expression_sql,
)
from mongoeco.engines.virtual_indexes import document_in_virtual_index
from mongoeco.errors import BulkWriteError
from mongoeco.types import ObjectId, WriteCommandResult, WriteErrorEntry

PATCHED_VERSION = "4.11.0"
MMAP_BYTES = 1 << 30  # address space only; pages come from the OS page cache
CACHE_KIB = 32 * 1024
# halochat opens no change streams. mongoeco records every write in a change outbox anyway
# (there is no switch); this many newest entries are kept (its default: 10,000, and tables
# of that size made each write slower until the store held as many documents).
CHANGE_OUTBOX_MAX_ENTRIES = 1_000

# Feature-cache kinds (the key's text before the first ':') -> the engine method computing
# it and whether the feature is "some document has P" (else: the uniform sort type).
_FEATURES: dict[str, tuple[str, bool]] = {
    "traverses_array": ("_field_traverses_array_in_collection", True),
    "top_level_array": ("_field_is_top_level_array_in_collection", True),
    "traverses_dbref": ("_field_traverses_dbref_in_collection", True),
    "tagged_type": ("_field_contains_tagged_value_type_in_collection", True),
    "contains_real_numeric": ("_field_contains_real_numeric_in_collection", True),
    "contains_non_ascii_text": ("_field_contains_non_ascii_text_in_collection", True),
    "comparison_mismatch": ("_field_has_comparison_type_mismatch_in_collection", True),
    "scalar_or_array_comparison_mismatch": (
        "_field_has_scalar_or_array_element_type_mismatch_in_collection",
        True,
    ),
    "uniform_scalar_sort_type": ("_field_has_uniform_scalar_sort_type_in_collection", False),
}
_MAX_QUERIES = 4
_NUMBER_TAGS = ("int32", "int64", "double")
_NUMBER_TAGS_SQL = ", ".join(f"'{tag}'" for tag in _NUMBER_TAGS)
_DECIMAL_TAGS_SQL = "'decimal128', 'decimal128_public'"
# Kinds whose key is "kind:field:extra" (extra never contains ':'; a field may not either).
_TWO_ARG_KINDS = {"tagged_type", "comparison_mismatch", "scalar_or_array_comparison_mismatch"}


def patch_applies() -> bool:
    return mongoeco.__version__ == PATCHED_VERSION


class _RowsOnly:
    """Stands in for the engine so its feature SQL runs over a scratch table of new rows."""

    def __init__(self, engine: SQLiteEngine, conn: sqlite3.Connection) -> None:
        self._engine = engine
        self._conn = conn
        self._collection_features_cache: dict[tuple[str, str, str], bool | str] = {}

    def _require_connection(self, *_args: object, **_kwargs: object) -> sqlite3.Connection:
        return self._conn

    def __getattr__(self, name: str) -> Any:
        func = getattr(type(self._engine), name, None)
        if isinstance(func, types.FunctionType):
            return types.MethodType(func, self)
        return getattr(self._engine, name)


def _narrowing_condition(field: str, value: Any) -> list[tuple[str, list[Any]]] | None:
    """SQL alternatives over mongoeco's index expressions such that every document whose
    `field` equals `value` (BSON equality) satisfies one of them.

    `value` is in the engine's internal form; its codec encoding is what the expression
    index holds (a plain JSON value, or a {type, value} tag).
    """
    type_sql, value_sql = type_expression_sql(field), value_expression_sql(field)
    encoded = DocumentCodec.encode(value)
    tag = None
    if DocumentCodec._is_tagged_value(encoded):
        payload = encoded[DocumentCodec._MARKER]
        tag, encoded = payload[DocumentCodec._TYPE], payload[DocumentCodec._VALUE]
    if tag == "objectid":
        return [(f"{type_sql} = ? AND {value_sql} = ?", [tag, encoded])]
    if tag is None and isinstance(encoded, str):
        return [(f"{type_sql} = '' AND {value_sql} = ?", [encoded])]
    if tag in (None, *_NUMBER_TAGS) and type(encoded) in (int, float):
        if not math.isfinite(encoded):
            return None
        # Equal numbers of any type share the numeric value, except Decimal128, stored as
        # text: such rows always stay candidates. Two alternatives keep both index seeks.
        return [
            (f"{type_sql} IN ('', {_NUMBER_TAGS_SQL}) AND {value_sql} = ?", [encoded]),
            (f"{type_sql} IN ({_DECIMAL_TAGS_SQL})", []),
        ]
    return None


def _id_of_plan(plan: Any) -> Any:
    """v when `plan` is {_id: v, ...} (an AND with an ObjectId or string equality on _id)."""
    if not isinstance(plan, AndCondition):
        return None
    for clause in plan.clauses:
        if (
            type(clause) is EqualsCondition
            and clause.field == "_id"
            and type(clause.value) in (ObjectId, str)
        ):
            return clause.value
    return None


class FlatCostSQLiteEngine(SQLiteEngine):
    """SQLiteEngine whose insert/find/update cost does not grow with the collection."""

    def __init__(self, path: str, *, inline: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("change_outbox_max_entries", CHANGE_OUTBOX_MAX_ENTRIES)
        super().__init__(path, **kwargs)
        self._flat = threading.local()
        self._inline = inline

    # 6 + 7: per-operation overhead (only with inline=True: a process of its own) ------------

    async def _run_blocking(self, func: Any, /, *args: Any, **kwargs: Any) -> Any:
        # mongoeco hands each operation to a worker thread so that it never blocks the
        # caller's event loop. The embedded child's loop does nothing else, and its event loop
        # thread running the SQLite work directly saves two thread hand-offs per operation.
        # Operations still run one at a time and commit before they return; the context is
        # copied as mongoeco does for its workers.
        if not self._inline:
            return await super()._run_blocking(func, *args, **kwargs)
        return contextvars.copy_context().run(func, *args, **kwargs)

    def dispatch_committed_changes(self, consumer_id: str, consumer: Any) -> None:
        if self._inline and _PUBLICATION_DISABLED:
            return  # 10: nothing is ever recorded, so there is nothing to hand over
        # After every write mongoeco hands the new change-outbox entries to the change-stream
        # hub under a lease, and starts (and joins) a thread that renews the lease every 10 s
        # in case the hand-off is slow. Inline, the hand-off of one write's entry takes well
        # under a millisecond and nothing else runs meanwhile, so the 30 s lease needs no
        # renewing: the same lease, hand-off and checkpoints, without the thread.
        if not self._inline:
            super().dispatch_committed_changes(consumer_id, consumer)
            return
        with _SQLITE_CHANGE_DISPATCH.hold(f"{self._change_dispatch_scope}\0{consumer_id}"):
            generation = self._acquire_change_dispatch_lease(consumer_id)
            try:
                self._dispatch_committed_changes_serial(
                    consumer_id,
                    consumer,
                    generation=generation,
                    heartbeat=_ChangeDispatchHeartbeat(),
                )
            finally:
                self._release_change_dispatch_lease(consumer_id, generation)

    # 5: connections -------------------------------------------------------------------------

    def _create_sqlite_connection(self) -> sqlite3.Connection:
        # Readers open short-lived connections, each with a cold 2 MB page cache by default;
        # memory-mapped reads share the OS page cache, so a larger file costs no more I/O calls.
        connection = super()._create_sqlite_connection()
        if self._path != ":memory:":
            connection.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        return connection

    # 1 + 2: unique-index validation -----------------------------------------------------

    def _validate_document_against_unique_indexes(
        self,
        db_name: str,
        coll_name: str,
        document: dict[str, Any],
        *,
        exclude_storage_key: str | None = None,
        skip_id_check: bool = False,
        scan_payload_id: bool = False,
    ) -> None:
        if scan_payload_id and not id_contains_numeric_value(document.get("_id")):
            scan_payload_id = False
        handled = []
        for index in self._load_indexes(db_name, coll_name):
            queries = self._narrowed_unique_check(db_name, coll_name, document, index)
            if queries is not None:
                handled.append((index, queries))
        names = {index["name"] for index, _ in handled}
        with self._without_indexes(names):
            super()._validate_document_against_unique_indexes(
                db_name,
                coll_name,
                document,
                exclude_storage_key=exclude_storage_key,
                skip_id_check=skip_id_check,
                scan_payload_id=scan_payload_id,
            )
        for index, queries in handled:
            self._validate_compound_multikey_shape(document, index)
            self._check_unique_candidates(
                db_name, coll_name, document, index, queries, exclude_storage_key
            )

    def _narrowed_unique_check(
        self, db_name: str, coll_name: str, document: dict[str, Any], index: Any
    ) -> list[tuple[str, list[Any]]] | None:
        fields = index["fields"]
        if (
            not index["unique"]
            or len(fields) < 2
            or not index.get("physical_name")
            or index.get("collation") is not None
            or not document_in_virtual_index(document, index)
            or self._unique_index_uses_multikey_values(db_name, coll_name, document, index)
        ):
            return None
        # One query per combination of the fields' alternatives (at most a few).
        queries: list[tuple[str, list[Any]]] = [("", [])]
        for field in fields:
            found, value = get_document_value(document, field)
            alternatives = _narrowing_condition(field, value) if found else None
            if alternatives is not None:
                queries = [
                    (f"{sql} AND {alt_sql}", [*params, *alt_params])
                    for sql, params in queries
                    for alt_sql, alt_params in alternatives
                ]
        if queries == [("", [])] or len(queries) > _MAX_QUERIES:
            return None
        return queries

    def _check_unique_candidates(
        self,
        db_name: str,
        coll_name: str,
        document: dict[str, Any],
        index: Any,
        queries: list[tuple[str, list[Any]]],
        exclude_storage_key: str | None,
    ) -> None:
        fields = index["fields"]
        key = tuple(self._index_value(document, field) for field in fields)
        conn = self._require_connection()
        seen: set[str] = set()
        for sql, params in queries:
            for storage_key, payload in conn.execute(
                f"SELECT storage_key, document FROM documents "
                f"WHERE db_name = ? AND coll_name = ?{sql}",
                (db_name, coll_name, *params),
            ):
                if storage_key in seen or storage_key == exclude_storage_key:
                    continue
                seen.add(storage_key)
                self._raise_if_same_key(db_name, coll_name, document, index, key, payload)

    def _raise_if_same_key(
        self,
        db_name: str,
        coll_name: str,
        document: dict[str, Any],
        index: Any,
        key: tuple[Any, ...],
        payload: str,
    ) -> None:
        fields = index["fields"]
        existing = self._deserialize_document(payload)
        if not document_in_virtual_index(existing, index):
            return
        if tuple(self._index_value(existing, field) for field in fields) == key:
            raise self._unique_key_error(
                f"Duplicate key for unique index '{index['name']}': {fields}={key!r}",
                f"{db_name}.{coll_name}",
                document,
                index=index,
                conflict=key,
            )

    @contextmanager
    def _without_indexes(self, names: set[str]) -> Iterator[None]:
        self._flat.hidden = names
        try:
            yield
        finally:
            self._flat.hidden = None

    def _load_indexes(self, db_name: str, coll_name: str) -> Any:
        indexes = super()._load_indexes(db_name, coll_name)
        hidden = getattr(self._flat, "hidden", None)
        if hidden:
            return [index for index in indexes if index["name"] not in hidden]
        return indexes

    # 4: sorted reads -----------------------------------------------------------------------

    def _sort_requires_python(self, db_name: str, coll_name: str, plan: Any, sort: Any) -> bool:
        # mongoeco probes "does a matching document hold an array/odd-typed sort value?" with
        # the generic filter SQL, whose array alternative defeats every index: a full scan per
        # sorted find. The array-aware translation the real query uses selects the same
        # documents and keeps the index.
        return sort_requires_python(
            db_name=db_name,
            coll_name=coll_name,
            plan=plan,
            sort=sort,
            plan_has_array_traversing_paths=self._plan_has_array_traversing_paths,
            translate_query_plan=lambda node: self._translate_query_plan_with_multikey(
                db_name, coll_name, node
            ),
            field_traverses_array_in_collection=self._field_traverses_array_in_collection,
            field_contains_tagged_bytes_in_collection=(
                self._field_contains_tagged_bytes_in_collection
            ),
            field_contains_tagged_undefined_in_collection=(
                self._field_contains_tagged_undefined_in_collection
            ),
            fetchone=lambda sql, params: self._require_connection().execute(sql, params).fetchone(),
            type_expression_sql=type_expression_sql,
            json_path_for_field=json_path_for_field,
        )

    # 8: a filter on _id plus other conditions (a conditional find_one_and_update) -----------

    def _select_first_document_for_plan(
        self, db_name: str, coll_name: str, plan: Any, *, hint: Any = None, context: Any = None
    ) -> tuple[str, Any] | None:
        # mongoeco reads a lone {_id: v} by primary key, but {_id: v, state: s} goes through
        # the generic filter SQL, which no index serves: a full collection scan per
        # conditional update. At most the document stored under v's key can match; it is
        # fetched by key and the whole filter checked in Python, as mongoeco's own _id path
        # does (any other clauses: $in, $lte, ... are matched by mongoeco's own matcher). Only
        # ObjectId/string _ids take this path (numbers of several types share one key rule).
        document_id = _id_of_plan(plan) if hint is None else None
        if document_id is None:
            return super()._select_first_document_for_plan(
                db_name, coll_name, plan, hint=hint, context=context
            )
        conn = self._require_connection(context)
        with self._bind_connection(conn), sqlite_read_scope(conn):
            row = conn.execute(
                "SELECT storage_key, document FROM documents "
                "WHERE db_name = ? AND coll_name = ? AND storage_key = ?",
                (db_name, coll_name, self._storage_key(document_id)),
            ).fetchone()
        if row is None:
            return None
        storage_key, payload = row
        document = self._deserialize_document(payload)
        return (storage_key, document) if QueryEngine.match_plan(document, plan) else None

    # 3: the collection feature cache ----------------------------------------------------
    # Inserts and updates run in a "writing" scope that collects the documents they store
    # (the engine hands each one to the index-entry rebuilders); the invalidation the
    # engine calls at the end of the write then merges those documents into the cached
    # features. A write that stored nothing we saw (a delete, ...) invalidates as before.

    def _insert_document_sync(self, db_name: str, coll_name: str, document: Any, *a, **k):
        with self._writing(db_name, coll_name, [document]):
            return super()._insert_document_sync(db_name, coll_name, document, *a, **k)

    def _insert_documents_sync(self, db_name: str, coll_name: str, documents: Any, *a, **k):
        documents = list(documents)
        if a:
            prepared = list(a[0])
            a = (prepared, *a[1:])
        else:
            prepared = k["prepared_documents"] = list(k.get("prepared_documents", ()))
        # A copy: the feature merge empties the scope's list when it is done.
        with self._writing(db_name, coll_name, list(documents)):
            # The batch path has serialized every document already ((storage_key, payload,
            # ...) each): the feature merge reuses those payloads.
            for doc, entry in zip(documents, prepared, strict=False):
                self._flat.payloads[id(doc)] = (doc, entry[1])
            return super()._insert_documents_sync(db_name, coll_name, documents, *a, **k)

    def _serialize_document(self, document: Any) -> str:
        payload = super()._serialize_document(document)
        flat = getattr(self, "_flat", None)
        if getattr(flat, "writing", None) is not None:
            # What a write stores is what its feature merge looks at: encode it once.
            flat.payloads[id(document)] = (document, payload)
        return payload

    def _payload_of(self, db_name: str, coll_name: str, document: Any) -> str:
        entry = getattr(self._flat, "payloads", {}).get(id(document))
        if entry is not None and entry[0] is document:  # held by the cache: id not reused
            return entry[1]
        stored = getattr(self._flat, "stored_at", {}).get(id(document))
        if stored is not None and stored[0] is document:
            row = (
                stored[1]
                .execute(
                    "SELECT document FROM documents "
                    "WHERE db_name = ? AND coll_name = ? AND storage_key = ?",
                    (db_name, coll_name, stored[2]),
                )
                .fetchone()
            )
            if row is not None:
                return row[0]
        return self._serialize_document(document)

    def _update_with_operation_sync(self, db_name: str, coll_name: str, *a, **k):
        with self._writing(db_name, coll_name, []):
            return super()._update_with_operation_sync(db_name, coll_name, *a, **k)

    def _rebuild_multikey_entries_for_document(self, conn, db_name, coll_name, key, doc, idx):
        self._saw_written(db_name, coll_name, doc, conn, key)
        return super()._rebuild_multikey_entries_for_document(
            conn, db_name, coll_name, key, doc, idx
        )

    def _rebuild_scalar_entries_for_document(self, conn, db_name, coll_name, key, doc, idx):
        self._saw_written(db_name, coll_name, doc, conn, key)
        return super()._rebuild_scalar_entries_for_document(conn, db_name, coll_name, key, doc, idx)

    @contextmanager
    def _writing(self, db_name: str, coll_name: str, documents: list[Any]) -> Iterator[None]:
        outer = getattr(self._flat, "writing", None)
        if outer is None:
            self._flat.payloads = {}  # id(document) -> (document, its serialized form)
            self._flat.stored_at = {}  # id(document) -> (document, connection, storage key)
        self._flat.writing = (db_name, coll_name, documents)
        try:
            yield
        finally:
            self._flat.writing = outer
            if outer is None:
                self._flat.payloads = {}
                self._flat.stored_at = {}

    def _saw_written(
        self,
        db_name: str,
        coll_name: str,
        document: Any,
        conn: sqlite3.Connection | None = None,
        storage_key: str | None = None,
    ) -> None:
        writing = getattr(self._flat, "writing", None)
        if writing is None or writing[:2] != (db_name, coll_name):
            return
        if not any(seen is document for seen in writing[2]):
            writing[2].append(document)
        if conn is not None and storage_key is not None:
            # An update stores its row with SQL (json_set), never serializing the document
            # in Python: the merge reads that row back in the same transaction instead.
            self._flat.stored_at[id(document)] = (document, conn, storage_key)

    def _invalidate_collection_features_cache(
        self, db_name: str | None = None, coll_name: str | None = None
    ) -> None:
        flat = getattr(self, "_flat", None)  # None while SQLiteEngine.__init__ runs
        writing = getattr(flat, "writing", None)
        if writing is None or writing[:2] != (db_name, coll_name) or not writing[2]:
            super()._invalidate_collection_features_cache(db_name, coll_name)
            return
        self._merge_features(db_name, coll_name, writing[2])
        writing[2].clear()

    def _merge_features(self, db_name: str, coll_name: str, documents: list[Any]) -> None:
        cache = self._collection_features_cache
        keys = [key for key in list(cache) if key[:2] == (db_name, coll_name)]
        if not keys:
            return
        rows_only = self._rows_only()
        rows_only._conn.execute("DELETE FROM documents")
        rows_only._conn.executemany(
            "INSERT INTO documents VALUES (?, ?, ?, ?)",
            [
                (db_name, coll_name, str(i), self._payload_of(db_name, coll_name, doc))
                for i, doc in enumerate(documents)
            ],
        )
        for key in keys:
            self._merge_feature(rows_only, key, cache)

    def _rows_only(self) -> _RowsOnly:
        """This thread's scratch table (the engine's writes may come from several threads)."""
        rows_only = getattr(self._flat, "rows_only", None)
        if rows_only is None:
            scratch = sqlite3.connect(":memory:", check_same_thread=False)
            scratch.execute("CREATE TABLE documents (db_name, coll_name, storage_key, document)")
            rows_only = self._flat.rows_only = _RowsOnly(self, scratch)
        rows_only._collection_features_cache.clear()
        return rows_only

    def _merge_feature(
        self, rows_only: _RowsOnly, key: tuple[str, str, str], cache: dict[Any, Any]
    ) -> None:
        old = cache.get(key)
        kind, _, rest = key[2].partition(":")
        spec = _FEATURES.get(kind)
        if spec is None or old is None:
            cache.pop(key, None)
            return
        method_name, any_doc = spec
        if any_doc and old is True:
            # Some stored document had P. After an update it may no longer, but a true flag
            # only sends mongoeco down its general (slower, always correct) path.
            return
        if not any_doc and not isinstance(old, str):
            cache.pop(key, None)  # False means "mixed" or "empty": recompute when asked
            return
        args = rest.rsplit(":", 1) if kind in _TWO_ARG_KINDS else [rest]
        method = getattr(SQLiteEngine, method_name)
        new = method(rows_only, key[0], key[1], *args)
        if any_doc:
            cache[key] = bool(new)
        else:
            cache[key] = old if new == old else False


# 11: immutable values are not deep-copied ---------------------------------------------------

# Immutable BSON values: a deep copy may share them, as it shares str and int.
_IMMUTABLE_VALUES: tuple[type, ...] = (
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    datetime.timezone,
    bson.ObjectId,
    ObjectId,
)


def share_immutable_values() -> None:
    """copy.deepcopy treats datetimes and ObjectIds as atomic (point 11); child only."""
    for kind in _IMMUTABLE_VALUES:
        copy._deepcopy_dispatch.setdefault(kind, copy._deepcopy_atomic)  # type: ignore[attr-defined]


# 10: no change-event bookkeeping ------------------------------------------------------------

_PUBLICATION_DISABLED = False


def disable_change_publication() -> None:
    """Operations record no change events (see point 10); only the embedded child calls it."""
    global _PUBLICATION_DISABLED
    if _PUBLICATION_DISABLED:
        return
    original = AsyncCollection._new_operation_context

    def new_operation_context(self: Any, **kwargs: Any) -> Any:
        kwargs["publication"] = ChangePublicationPolicy.DISABLED
        return original(self, **kwargs)

    AsyncCollection._new_operation_context = new_operation_context
    _PUBLICATION_DISABLED = True


# 9: the wire insert command ----------------------------------------------------------------


def _write_error_entry(raw: dict[str, Any]) -> WriteErrorEntry:
    details = {k: v for k, v in raw.items() if k not in ("index", "errmsg", "code", "op")}
    return WriteErrorEntry(
        index=raw["index"], errmsg=raw["errmsg"], code=raw.get("code"), details=details or None
    )


def install_batch_insert_command() -> None:
    """Routes multi-document wire inserts through mongoeco's insert_many (see point 9)."""
    service = _write_commands.DatabaseAdminWriteCommandService
    original = service.command_insert
    if getattr(original, "halochat_batch", False):
        return

    async def command_insert(self: Any, spec: dict[str, Any], *, session: Any = None) -> Any:
        documents = spec.get("documents")
        if not isinstance(documents, list) or len(documents) < 2:
            return await original(self, spec, session=session)
        # The same parsing as mongoeco's command_insert.
        admin = self._admin
        name = admin._require_collection_name(spec.get("insert"), "insert")
        documents = admin._normalize_insert_documents(documents)
        ordered = admin._normalize_ordered_from_command(spec.get("ordered"))
        bypass = _write_commands.command_boolean(
            spec.get("bypassDocumentValidation", False), "bypassDocumentValidation", numeric=True
        )
        acknowledged = _write_commands.write_command_acknowledged(
            spec, dialect=admin._mongodb_dialect.key
        )
        collection = admin._database.get_collection(name)
        try:
            await collection.insert_many(
                documents, ordered=ordered, bypass_document_validation=bypass, session=session
            )
        except BulkWriteError as exc:
            result = WriteCommandResult(
                count=exc.details["nInserted"],
                write_errors=[_write_error_entry(e) for e in exc.details["writeErrors"]],
            )
        else:
            result = WriteCommandResult(count=len(documents))
        return _write_commands._write_command_result(result, acknowledged=acknowledged)

    command_insert.halochat_batch = True  # type: ignore[attr-defined]
    service.command_insert = command_insert


__all__ = [
    "PATCHED_VERSION",
    "FlatCostSQLiteEngine",
    "disable_change_publication",
    "install_batch_insert_command",
    "patch_applies",
    "share_immutable_values",
]
