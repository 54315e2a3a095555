"""One enum of error labels, shared by the parser, the judges and the error analysis.

Names follow the Berkeley Function Calling Leaderboard's ``error_type`` strings where the cases
overlap; the agent cases (Finish, give up, unknown tool, repeated calls) are ours.
"""
from enum import StrEnum


class ErrorLabel(StrEnum):
    DECODER_FAILED = "ast_decoder:decoder_failed"    # output is not Thought / Action / Action Input
    INVALID_JSON_INPUT = "invalid_json_input"        # Action Input is not a JSON object
    WRONG_FUNC_NAME = "wrong_func_name"              # a declared tool, but not the expected one
    UNKNOWN_TOOL = "unknown_tool"                    # a tool the task does not declare
    MISSING_REQUIRED = "missing_required"
    UNEXPECTED_PARAM = "unexpected_param"
    TYPE_ERROR = "type_error"
    VALUE_ERROR = "value_error"
    MISSING_CALL = "missing_call"                    # an expected call was never made
    IRRELEVANCE = "irrelevance_error"                # called a tool where none was expected
    REPEATED_CALL = "repeated_call"                  # the same call again and again
    NO_FINISH = "no_finish"                          # budget spent without calling Finish
    GIVE_UP = "give_up"                              # Finish with give_up_and_restart
    EMPTY_ANSWER = "empty_answer"                    # Finish with an empty final_answer
    BUDGET_EXHAUSTED = "budget_exhausted"            # a search spent its model calls without an answer
    UNGROUNDED_ANSWER = "ungrounded_answer"          # the answer carries nothing a relevant tool returned
    UNGROUNDED_ARGUMENT = "ungrounded_argument"      # a relevant tool called only with text the task never held
