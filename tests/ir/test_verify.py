"""The verifier names the node and op of each structural problem."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from onnx import helper

from leangraph.errors import InvalidGraphError, UnsupportedOpError
from leangraph.ir import DOMAIN, verify_model
from tests.helpers import add_relu_model, make_model, tensor


def to_ir(proto):
    return ir.from_proto(proto)


def test_valid_model_passes():
    verify_model(to_ir(add_relu_model()))


def test_cycle_is_reported_with_its_nodes():
    proto = make_model(
        [
            helper.make_node("Add", ["x", "b"], ["a"], name="add"),
            helper.make_node("Relu", ["a"], ["b"], name="relu"),
            helper.make_node("Relu", ["b"], ["y"], name="out"),
        ],
        [tensor("x")], [tensor("y")], name="loopy",
    )
    with pytest.raises(InvalidGraphError, match=r"model 'loopy' has a cycle: .*'add' \(Add\).*'relu' \(Relu\)"):
        verify_model(to_ir(proto))


def test_missing_initializer_names_node_and_value():
    proto = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add_w")], [tensor("x")], [tensor("y")])
    with pytest.raises(InvalidGraphError, match=r"node 'add_w' \(ai.onnx::Add\) .* reads 'w'.*missing initializer"):
        verify_model(to_ir(proto))


def test_unknown_standard_op():
    proto = make_model([helper.make_node("Relux", ["x"], ["y"], name="r")], [tensor("x")], [tensor("y")])
    with pytest.raises(UnsupportedOpError, match=r"node 'r' \(ai.onnx::Relux\).*'Relux' is not an operator"):
        verify_model(to_ir(proto))


def test_unknown_domain():
    proto = make_model(
        [helper.make_node("Foo", ["x"], ["y"], name="foo", domain="com.example")],
        [tensor("x")], [tensor("y")], domains=["com.example"],
    )
    with pytest.raises(UnsupportedOpError, match=r"domain 'com.example' is unknown"):
        verify_model(to_ir(proto))


def test_unknown_leangraph_op():
    proto = make_model(
        [helper.make_node("Fancy", ["x"], ["y"], name="f", domain=DOMAIN)], [tensor("x")], [tensor("y")], domains=[DOMAIN]
    )
    with pytest.raises(UnsupportedOpError, match=r"leangraph::Fancy is not a leangraph op \(known: Attention"):
        verify_model(to_ir(proto))


def test_leangraph_op_with_wrong_arity_and_attribute():
    proto = make_model(
        [helper.make_node("Gelu", ["x", "x"], ["y"], name="g", domain=DOMAIN)], [tensor("x")], [tensor("y")], domains=[DOMAIN]
    )
    with pytest.raises(UnsupportedOpError, match=r"node 'g' \(leangraph::Gelu\) has 2 inputs; leangraph::Gelu takes 1 to 1"):
        verify_model(to_ir(proto))
    proto = make_model(
        [helper.make_node("Gelu", ["x"], ["y"], name="g", domain=DOMAIN, mode="fast")],
        [tensor("x")], [tensor("y")], domains=[DOMAIN],
    )
    with pytest.raises(UnsupportedOpError, match=r"has attribute 'mode', which leangraph::Gelu does not define"):
        verify_model(to_ir(proto))


def test_model_local_function_is_known():
    body = [helper.make_node("Relu", ["a"], ["b"])]
    function = helper.make_function("custom", "MyRelu", ["a"], ["b"], body, [helper.make_opsetid("", 20)])
    proto = make_model(
        [helper.make_node("MyRelu", ["x"], ["y"], name="call", domain="custom")],
        [tensor("x")], [tensor("y")], domains=["custom"],
    )
    proto.functions.append(function)
    verify_model(to_ir(proto))
