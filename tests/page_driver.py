"""Driving the explorer's page in a real headless browser (the `browser` fixture in conftest.py:
Debian's chromium through selenium): waiting for the page, clicking a token, moving a slider as a
user's drag ends, and a screenshot of the whole page."""

import os
import shutil
import time


def wait(driver, script, *arguments, timeout=60):
    """Until the page's script (with its arguments) returns something true, or TimeoutError."""
    deadline = time.time() + timeout
    while not driver.execute_script(script, *arguments):
        if time.time() > deadline:
            raise TimeoutError(script)
        time.sleep(0.05)


def click_chip(driver, index, shift=False):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    chip = driver.find_element(By.CSS_SELECTOR, f"g.chip[data-index='{index}'] rect")
    actions = ActionChains(driver)
    if shift:
        actions.key_down(Keys.SHIFT).click(chip).key_up(Keys.SHIFT).perform()
    else:
        actions.click(chip).perform()


SETTLED = "return window.explorer.stats.settled"  # the page shows the answer to its newest state


def slide(driver, slider, value):
    """Move a range input as a user's drag ends: set it and fire its input event."""
    driver.execute_script(f"const s = document.getElementById('{slider}'); s.value = {value}; s.dispatchEvent(new Event('input'))")
    wait(driver, SETTLED)


def open_page(driver, url):
    driver.get(url + "/")
    wait(driver, "return window.explorer && window.explorer.stats.updates > 0 && window.explorer.stats.settled")


def screenshot(driver, path):
    """The whole page (the window made as tall as the page for the picture, then put back)."""
    size = driver.get_window_size()
    driver.set_window_size(size["width"], driver.execute_script("return document.documentElement.scrollHeight") + 140)
    driver.save_screenshot(str(path))
    driver.set_window_size(size["width"], size["height"])
    if os.environ.get("CONTGPT_SCREENSHOT"):  # how docs/explorer.png is made: CONTGPT_SCREENSHOT=docs/explorer.png
        shutil.copy(path, os.environ["CONTGPT_SCREENSHOT"])
