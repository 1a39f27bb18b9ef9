"""A tiny, honest ONNX cross-encoder for tests: no cross-encoder ONNX file installs from the
package registries here (flashrank and the like download theirs at run time) and exporting one
needs the hub. This graph has a real cross-encoder's interface (input_ids, attention_mask,
token_type_ids -> logits (batch, 1)) and computes a real relevance function: the share of the
query segment's tokens ([CLS] and [SEP] included) that occur in the passage segment, a lexical
overlap score in [0, 1]."""

from __future__ import annotations

from pathlib import Path


def write_overlap_cross_encoder(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    def tensor(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])

    ints = helper.make_tensor("axes1", TensorProto.INT64, [1], [1])
    ints2 = helper.make_tensor("axes2", TensorProto.INT64, [1], [2])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["token_type_ids"], ["types"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "types"], ["query_types"]),
        helper.make_node("Mul", ["mask", "query_types"], ["query_mask"]),
        helper.make_node("Mul", ["mask", "types"], ["passage_mask"]),
        helper.make_node("Unsqueeze", ["input_ids", "axes2"], ["ids_rows"]),
        helper.make_node("Unsqueeze", ["input_ids", "axes1"], ["ids_cols"]),
        helper.make_node("Equal", ["ids_rows", "ids_cols"], ["same"]),
        helper.make_node("Cast", ["same"], ["same_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["passage_mask", "axes1"], ["passage_cols"]),
        helper.make_node("Mul", ["same_f", "passage_cols"], ["in_passage"]),
        helper.make_node("ReduceMax", ["in_passage", "axes2"], ["found"], keepdims=0),
        helper.make_node("Mul", ["found", "query_mask"], ["query_found"]),
        helper.make_node("ReduceSum", ["query_found", "axes1"], ["hits"], keepdims=1),
        helper.make_node("ReduceSum", ["query_mask", "axes1"], ["asked"], keepdims=1),
        helper.make_node("Div", ["hits", "asked"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "overlap_cross_encoder",
        [tensor("input_ids"), tensor("attention_mask"), tensor("token_type_ids")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        initializer=[ints, ints2, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="chunk-registry tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
