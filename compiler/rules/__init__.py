"""The rule language: dae's syntax parsed with a lark grammar into a small AST."""
from .ast import Call, Param, RuleAst
from .parse import (
                    RuleSyntaxError,
                    StructuredRuleError,
                    abbreviate,
                    parse_filter,
                    parse_outbound,
                    parse_rule,
                    parse_structured_rule,
                    structured_param_path,
)

__all__ = [
    "Call", "Param", "RuleAst", "RuleSyntaxError", "StructuredRuleError", "abbreviate", "parse_filter",
    "parse_outbound", "parse_rule", "parse_structured_rule", "structured_param_path",
]
