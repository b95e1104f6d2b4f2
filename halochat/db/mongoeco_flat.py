"""mongoeco's SQLiteEngine adapted for halochat's embedded database child.

mongoeco 4.11.0 as shipped makes writes and some reads cost O(collection size), and adds
per-operation overheads that matter for a chat server. docs/embedded-db.md lists each
adaptation by number with its measurement; this module keeps the numbering:

1. Inserts decode every stored `_id` (`scan_payload_id`): only numeric `_id`s need that.
2. Compound unique indexes are checked by decoding the whole collection: candidates are
   fetched through the expression index mongoeco already builds, then compared exactly
   as mongoeco does (collation, arrays or other value types fall back to mongoeco's code).
3. The per-collection feature cache is merged with the written documents, not dropped.
4. The sorted-find probe uses the array-aware filter translation (keeps the index).
6. Operations run on the child's event loop instead of a worker thread each.
8. {_id: v, ...} reads the document stored under v's key and matches it in Python.
9. A multi-document wire `insert` goes through mongoeco's own insert_many batch path.
10. No change-event bookkeeping (the wire server serves no change streams).
11. copy.deepcopy shares datetimes and ObjectIds (immutable) instead of rebuilding them.
12. The feature merge (3) reuses the serialized form the write stored.

(5, the PRAGMA tuning and a smaller change outbox, and 7, dispatch without its lease
thread, are gone: 10 makes 7 and the outbox moot; 5 measured no better.)

Everything here runs only in the embedded child (`python -m halochat.db.embedded`, a process
of its own): `adapted_engine` checks the internals, installs the three process-wide changes
(9, 10, 11) and returns the engine. The plain engine (`--plain`) is kept for comparison
(tests/test_store_differential.py runs the same operations on both).

THE FENCE: every mongoeco (and `copy`) internal this module touches is listed in INTERNALS.
`check_internals` runs before anything is patched: a mongoeco other than PINNED_VERSION, or
any listed name missing, stops the child with MongoecoInternalsChanged (halochat then fails
to start, loudly) instead of running on internals nobody re-read. tests/test_store_fence.py
keeps INTERNALS equal to what the module really touches.
"""

import contextvars
import copy
import datetime
import importlib
import inspect
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
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.engines.sqlite_query import (
    json_path_for_field,
    type_expression_sql,
    value_expression_sql,
)
from mongoeco.engines.virtual_indexes import document_in_virtual_index
from mongoeco.errors import BulkWriteError
from mongoeco.types import ObjectId, WriteCommandResult, WriteErrorEntry

PINNED_VERSION = "4.11.0"

# module[:class] -> the internal (underscore) names used from it, and the public names of
# private modules. Instance attributes are checked on a probe engine, or in __init__'s source.
INTERNALS: dict[str, tuple[str, ...]] = {
    "mongoeco.engines.sqlite:SQLiteEngine": (
        # overridden (their signatures are checked too: see _SIGNATURES)
        "_run_blocking",
        "_validate_document_against_unique_indexes",
        "_load_indexes",
        "_sort_requires_python",
        "_select_first_document_for_plan",
        "_insert_document_sync",
        "_insert_documents_sync",
        "_serialize_document",
        "_update_with_operation_sync",
        "_rebuild_multikey_entries_for_document",
        "_rebuild_scalar_entries_for_document",
        "_invalidate_collection_features_cache",
        # called
        "_bind_connection",
        "_deserialize_document",
        "_field_traverses_array_in_collection",
        "_field_contains_tagged_bytes_in_collection",
        "_field_contains_tagged_undefined_in_collection",
        "_index_value",
        "_plan_has_array_traversing_paths",
        "_require_connection",
        "_storage_key",
        "_translate_query_plan_with_multikey",
        "_unique_index_uses_multikey_values",
        "_unique_key_error",
        "_validate_compound_multikey_shape",
        # called by name for the feature merge (3), see _FEATURES
        "_field_is_top_level_array_in_collection",
        "_field_traverses_dbref_in_collection",
        "_field_contains_tagged_value_type_in_collection",
        "_field_contains_real_numeric_in_collection",
        "_field_contains_non_ascii_text_in_collection",
        "_field_has_comparison_type_mismatch_in_collection",
        "_field_has_scalar_or_array_element_type_mismatch_in_collection",
        "_field_has_uniform_scalar_sort_type_in_collection",
        # instance attribute
        "_collection_features_cache",
    ),
    "mongoeco.engines._sqlite_connection": ("sqlite_read_scope",),
    "mongoeco.engines._sqlite_plan_heuristics": ("sort_requires_python",),
    "mongoeco.core.codec:DocumentCodec": ("_is_tagged_value", "_MARKER", "_TYPE", "_VALUE"),
    "mongoeco.api._async.collection:AsyncCollection": ("_new_operation_context",),
    "mongoeco.api._async._database_admin_write_commands": (
        "DatabaseAdminWriteCommandService",
        "_write_command_result",
        "command_boolean",
        "write_command_acknowledged",
    ),
    "mongoeco.api._async._database_admin_write_commands:DatabaseAdminWriteCommandService": (
        "_admin",  # instance attribute
    ),
    "mongoeco.api._async.database_admin:AsyncDatabaseAdminService": (
        "_database",  # instance attribute
        "_mongodb_dialect",
        "_normalize_insert_documents",
        "_normalize_ordered_from_command",
        "_require_collection_name",
    ),
    "copy": ("_deepcopy_dispatch", "_deepcopy_atomic"),
}

# The overridden methods' parameters as written against 4.11.0 (kinds aside): a changed
# signature means mongoeco calls them differently now.
_SIGNATURES: dict[str, str] = {
    "_run_blocking": "(self, func, *args, **kwargs)",
    "_validate_document_against_unique_indexes": (
        "(self, db_name, coll_name, document, exclude_storage_key=None, "
        "skip_id_check=False, scan_payload_id=False)"
    ),
    "_load_indexes": "(self, db_name, coll_name)",
    "_sort_requires_python": "(self, db_name, coll_name, plan, sort)",
    "_select_first_document_for_plan": "(self, db_name, coll_name, plan, hint=None, context=None)",
    "_serialize_document": "(self, document)",
    "_insert_documents_sync": (
        "(self, db_name, coll_name, documents, prepared_documents, snapshot_indexes, context, "
        "bypass_document_validation=False, snapshot_options=None, operation_context=None)"
    ),
    "_rebuild_multikey_entries_for_document": (
        "(self, conn, db_name, coll_name, storage_key, document, indexes)"
    ),
    "_rebuild_scalar_entries_for_document": (
        "(self, conn, db_name, coll_name, storage_key, document, indexes)"
    ),
    "_invalidate_collection_features_cache": "(self, db_name=None, coll_name=None)",
}


class MongoecoInternalsChanged(RuntimeError):
    """The installed mongoeco is not the one this module was checked against."""


def _instance_attribute(cls: type, name: str) -> bool:
    return any(
        f"self.{name} =" in inspect.getsource(klass.__init__)
        for klass in cls.__mro__
        if "__init__" in vars(klass)
    )


def _signature(func: Any) -> str:
    # Names and defaults, without annotations (their spelling may change harmlessly).
    params = inspect.signature(func).parameters.values()
    return "(" + ", ".join(str(p.replace(annotation=p.empty)) for p in params) + ")"


def internals_problems() -> list[str]:
    """What differs from the mongoeco this module was written against (empty: nothing)."""
    if mongoeco.__version__ != PINNED_VERSION:
        return [f"mongoeco {mongoeco.__version__} installed, {PINNED_VERSION} pinned"]
    problems = []
    probe = None
    for owner, names in INTERNALS.items():
        module_name, _, class_name = owner.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            if class_name:
                target = getattr(target, class_name)
        except (ImportError, AttributeError):
            problems.append(f"{owner} is gone")
            continue
        for name in names:
            if hasattr(target, name):
                continue
            if owner.endswith(":SQLiteEngine"):
                probe = probe or target(":memory:")  # not connected: nothing to close
                if hasattr(probe, name):
                    continue
            elif isinstance(target, type) and _instance_attribute(target, name):
                continue
            problems.append(f"{owner}.{name} is gone")
    engine_class = importlib.import_module("mongoeco.engines.sqlite").SQLiteEngine
    for name, expected in _SIGNATURES.items():
        method = getattr(engine_class, name, None)
        if method is not None and _signature(method) != expected:
            problems.append(f"SQLiteEngine.{name}{_signature(method)}, expected {expected}")
    return problems


def check_internals() -> None:
    """Raises MongoecoInternalsChanged unless every internal used here is as written for."""
    if problems := internals_problems():
        raise MongoecoInternalsChanged(
            "halochat/db/mongoeco_flat.py was written against mongoeco "
            f"{PINNED_VERSION}'s internals: {'; '.join(problems)}. Install "
            f"mongoeco[wire]=={PINNED_VERSION} (pyproject.toml pins it), or re-check the "
            "module against the new source, or set MONGODB_URI to use MongoDB."
        )


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
    """SQLiteEngine whose insert/find/update cost does not grow with the collection. Only
    for a process of its own (6: its SQLite work runs on the caller's event loop)."""

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._flat = threading.local()

    # 6: no thread hop per operation ---------------------------------------------------------

    async def _run_blocking(self, func: Any, /, *args: Any, **kwargs: Any) -> Any:
        # mongoeco hands each operation to a worker thread so that it never blocks the
        # caller's event loop. The embedded child's loop does nothing else: running the SQLite
        # work directly saves two thread hand-offs per operation. Operations still run one at
        # a time and commit before they return; the context is copied as mongoeco does.
        return contextvars.copy_context().run(func, *args, **kwargs)

    def dispatch_committed_changes(self, consumer_id: str, consumer: Any) -> None:
        # 10: with publication disabled nothing is recorded, so there is nothing to hand over
        # (mongoeco would still take and release a lease, with a thread, after every write).
        if not _PUBLICATION_DISABLED:
            super().dispatch_committed_changes(consumer_id, consumer)

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
        indexes = self._load_indexes(db_name, coll_name)
        narrowed = {}
        for index in indexes:
            queries = self._narrowed_unique_check(db_name, coll_name, document, index)
            if queries is not None:
                narrowed[index["name"]] = queries
        checks = {
            "exclude_storage_key": exclude_storage_key,
            "skip_id_check": skip_id_check,
            "scan_payload_id": scan_payload_id,
        }
        if not narrowed:
            super()._validate_document_against_unique_indexes(
                db_name, coll_name, document, **checks
            )
            return
        # mongoeco's order, so that a document breaking several keys is refused for the same
        # one: the _id, then every index's multikey shape, then each unique index in turn.
        names = {index["name"] for index in indexes}
        with self._without_indexes(names):
            super()._validate_document_against_unique_indexes(
                db_name, coll_name, document, **checks
            )
        for index in indexes:
            if document_in_virtual_index(document, index):
                self._validate_compound_multikey_shape(document, index)
        for index in indexes:
            queries = narrowed.get(index["name"])
            if queries is not None:
                self._check_unique_candidates(
                    db_name, coll_name, document, index, queries, exclude_storage_key
                )
            elif index["unique"]:
                with self._without_indexes(names - {index["name"]}):
                    super()._validate_document_against_unique_indexes(
                        db_name,
                        coll_name,
                        document,
                        exclude_storage_key=exclude_storage_key,
                        skip_id_check=True,
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


def adapted_engine(path: str) -> FlatCostSQLiteEngine:
    """The embedded child's engine: checks the internals (raises MongoecoInternalsChanged),
    installs the process-wide changes 9-11 and returns the adapted engine. Only for a process
    that serves nothing else (python -m halochat.db.embedded)."""
    check_internals()
    install_batch_insert_command()
    disable_change_publication()
    share_immutable_values()
    return FlatCostSQLiteEngine(path)


__all__ = [
    "INTERNALS",
    "PINNED_VERSION",
    "FlatCostSQLiteEngine",
    "MongoecoInternalsChanged",
    "adapted_engine",
    "check_internals",
    "internals_problems",
]
