"""Test setup: 8 simulated CPU devices (multi-device tests use them; single-device code uses device 0).

This must run before anything imports JAX's backend.
"""
import os

os.environ.setdefault('JAX_NUM_CPU_DEVICES', '8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')


import pytest  # noqa: E402

from tests.tiny_config import tiny_digits_config  # noqa: E402


@pytest.fixture
def tiny_config(tmp_path):
    """A factory: tiny_config(**overrides) -> the tiny digits config with data under tmp_path/tfds."""
    def make(**overrides):
        return tiny_digits_config(str(tmp_path / 'tfds'), **overrides)
    return make


# Tests of the mixed modules that take more than ~15 s on 2 cores (whole-model compiles, every kernel form
# in bfloat16, subprocess CLIs): `make test` (-m "not slow") leaves them to `make test-slow`, which CI runs too.
SLOW_TESTS = {
    'test_pools_equal_flax', 'test_im2col_patches_are_the_taps_concatenated', 'test_depthwise_equals_lax',
    'test_shufflenet_same_numbers_under_every_impl', 'test_conv2d_equals_nn_conv',
    'test_figures_identical_under_1_and_8_devices', 'test_measured_records_carry_rates_and_steal',
    'test_fast_compile_options_leave_the_counts_unchanged', 'test_flops_against_macs_and_training',
    'test_cost_counts_the_step_that_trains', 'test_cli_csv_one_row_per_configuration', 'test_cli_bad_input',
    'test_output_shape_finite_every_resolution', 'test_init_variables_matches_flax_init_structure_and_scale',
    'test_mobilenet_v2_residuals_exactly_where_stride1_and_same_width', 'test_train_and_eval_modes',
    'test_a_second_process_loads_the_compiled_program_from_the_cache',
    'test_gradient_reaches_every_block_and_bfloat16_matches_float32',
    'test_sync_batch_stats_eight_devices_equal_one_device', 'test_two_processes_match_one_process',
    'test_end_to_end_on_tfds_mock_data', 'test_bfloat16_close_to_float32', 'test_gradient_reaches_every_block',
    'test_forward_and_gradient_trace_at_64', 'test_wrong_alpha_names_the_layer_both_shapes_and_the_alpha',
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.originalname in SLOW_TESTS or item.name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
