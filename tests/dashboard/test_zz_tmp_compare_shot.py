from test_browser import browser, dashboard_url, page, screenshot, seeded  # noqa: F401


def test_compare_shot(page, dashboard_url, seeded):  # noqa: F811
    a, b = seeded.job_a["id"], seeded.job_b["id"]
    page.goto(f"{dashboard_url}/compare?jobs={a},{b}&dataset={seeded.dataset_id}")
    main = page.get_by_test_id("stMain")
    main.get_by_text("per metric (95% CI)").first.wait_for()
    main.get_by_text("AP per class (95% CI)").first.wait_for()
    page.wait_for_timeout(1500)
    screenshot(page, "compare")
    page.goto(f"{dashboard_url}/?dataset={seeded.dataset_id}")
    main.get_by_text("mAP of the best 2 runs shown").wait_for()
    main.get_by_text("mAP", exact=True).first.wait_for()
