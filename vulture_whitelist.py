"""Names vulture cannot see used: read by frameworks, by name, or by SQL.

This file is never run; `make lint` passes it to vulture beside the code, and each
line below marks one name as used. Keep every entry explained: anything else that
vulture reports is dead code and goes.
"""
# ruff: noqa

# Quart calls these through their route decorators (daemon/api/*.py).
health_detailed, prometheus, published_input
list_videos  # GET /v1/videos (daemon/api/openai_videos.py)
openapi_json, docs  # GET /api/openapi.json and /api/docs (daemon/api/openapi.py)
estimate_cost  # POST /api/external/generation/batch/estimate (daemon/api/batches.py)
any_path  # the catch-all route of the test servers in tests/test_fetch.py
_.merge_slashes  # werkzeug's url_map setting, read by the router

# Webhook receivers in tests, routed by Quart's decorators.
hook

# PyAV's stream settings, read by the encoder.
_.pix_fmt

# hypercorn.Config attributes, read by hypercorn.
_.accesslog, _.errorlog, _.keep_alive_timeout, _.loglevel

# logging.handlers.QueueHandler.prepare is a hook the logging module calls.
_.prepare

# sqlite3 reads the connection's row_factory.
_.row_factory

# pytest reads a test module's marks from its pytestmark.
pytestmark

# attrs validators registered with the @field.validator decorator.
_._check_interval_order

# Columns of generation_requests kept as Job fields for batches, A/B experiments
# and ratings (features still to come), written and read by name through SQL.
experiment_id, variant_id, rating, feedback
# Model catalog keys operators set (and docs describe) that the code only carries.
expected_duration

# Provider-family parameter classes (actors/parameters.py): cattrs structures
# request bodies into them by field name; adapters read the resulting dicts.
prompt_upsampling, guidance, image_prompt_strength
output_compression, input_fidelity, user
aspect_ratio, negative_prompt, cfg_scale, camera_control, sound, static_mask
dynamic_masks, voice_list, resolution, generate_audio, strength
output_quality, go_fast, megapixels, num_inference_steps, disable_safety_checker
image_size, guidance_scale, enable_safety_checker, acceleration

# The protocol adapters with webhooks implement (documentation of the interface).
WebhookReceiver

# pytest: fixtures requested for their effect (MockClock), and autouse fixtures.
autojump_clock
_stop_logging
# The replicate client's and configparser's settings, read by those libraries.
_.poll_interval, _.optionxform


# aiosmtpd calls its handler's handle_DATA (the SMTP server in the alerting tests).
_.handle_DATA

# The admin pages (daemon/api/admin.py): routes and a template filter, called by Quart.
_when, logout, overview
