"""Migrations must work with the backend version still running while they are applied
(docs/upgrades.md): an upgrade may add, never remove or rename, and a column it adds is
nullable or has a server default. Removing comes in a later release ("contract"), once no
backend of the old version runs, and such a revision says so with a line `# contract: <why>`."""

import ast
from pathlib import Path

import pytest

VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"
DESTRUCTIVE_OPS = {"drop_column", "drop_table", "rename_table", "drop_constraint"}
DESTRUCTIVE_SQL = ("DROP TABLE", "DROP COLUMN", "RENAME ", "SET NOT NULL")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def unsafe_operations(source: str) -> list[str]:
    """What an upgrade() does that the running version could trip over."""
    tree = ast.parse(source)
    upgrade = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upgrade"), None
    )
    if upgrade is None:
        return []
    found = []
    for node in ast.walk(upgrade):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        op = node.func.attr
        if op in DESTRUCTIVE_OPS:
            found.append(op)
        elif op == "alter_column" and (
            _keyword(node, "new_column_name") is not None or _is_false(_keyword(node, "nullable"))
        ):
            found.append("alter_column (rename or NOT NULL)")
        elif op == "add_column":
            column = node.args[1] if len(node.args) > 1 else None
            if (
                isinstance(column, ast.Call)
                and _is_false(_keyword(column, "nullable"))
                and _keyword(column, "server_default") is None
            ):
                found.append("add_column NOT NULL without a server default")
        elif op == "execute" and node.args and isinstance(node.args[0], ast.Constant):
            sql = str(node.args[0].value).upper()
            found += [f"execute {word.strip()}" for word in DESTRUCTIVE_SQL if word in sql]
    return found


@pytest.mark.parametrize("path", sorted(VERSIONS.glob("*.py")), ids=lambda p: p.name)
def test_upgrades_are_backward_compatible_or_marked_contract(path: Path) -> None:
    source = path.read_text()
    unsafe = unsafe_operations(source)
    if unsafe:
        assert "# contract:" in source, f"{path.name} {unsafe}: see docs/upgrades.md"


def test_the_check_recognises_what_breaks_a_running_version() -> None:
    breaking = """
def upgrade():
    op.drop_column("devices", "tags")
    op.alter_column("devices", "name", new_column_name="label")
    op.add_column("devices", sa.Column("site", sa.String(), nullable=False))
    op.execute("ALTER TABLE devices ALTER COLUMN site SET NOT NULL")
"""
    assert len(unsafe_operations(breaking)) == 4
    fine = """
def upgrade():
    op.add_column("devices", sa.Column("site", sa.String(), nullable=True))
    op.add_column("devices", sa.Column("n", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix", "devices", ["site"])
def downgrade():
    op.drop_column("devices", "site")
"""
    assert unsafe_operations(fine) == []
